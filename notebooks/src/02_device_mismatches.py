# %% [markdown]
# # Device mismatches: split models, and devices that belong to a thread
#
# ## What you will learn
#
# * how accelerate's dispatch hooks move a model's inputs and outputs between devices, and why the KV
#   cache (the keys and values a model keeps from the tokens before) must be left out of that move
#   (`skip_keys`);
# * why the same code fails on one transformers release and not on another, and how a renamed argument
#   can silently switch a fix off;
# * that PyTorch's default device and current CUDA device belong to a **thread**, not to the process;
# * that since torch 2.12 `torch.compile`'s settings do too, and what that does to a compiled server;
# * a check that names the tensors on the wrong device, for your own code;
# * how to dry-run a device map on 2, 4 or 8 **virtual GPUs** on a laptop: its failure, its fix, and how
#   full each GPU gets, next to accelerate's own estimate.
#
# ## The reports
#
# Two reports, one error: `Expected all tensors to be on the same device, but found at least two
# devices, cuda:0 and cuda:1!`
#
# > 1. **A model split over devices**: Qwen3 split over GPUs with accelerate (`init_empty_weights`,
# >    `get_balanced_memory`, `infer_auto_device_map`, `load_checkpoint_and_dispatch`) fails on the **2nd**
# >    decoding step. Fix: `skip_keys=model._skip_keys_device_placement`
# >    ([transformers PR 23919](https://github.com/huggingface/transformers/pull/23919);
# >    [PR 28051](https://github.com/huggingface/transformers/pull/28051) shows the same failure in LLaVa).
# > 2. **A device that belongs to a thread**: a model made with `device="cuda"` in the main thread and used
# >    from another thread ([outlines issue 679](https://github.com/dottxt-ai/outlines/issues/679)).
#
# **Terms.** A *device map* assigns each part of a model (embeddings, each decoder layer, the head) to a
# device. accelerate's `dispatch_model` places the weights accordingly and adds *hooks*: small functions
# that run before and after each part's `forward` and move tensors to where they must be. The *KV cache*
# holds each layer's keys and values for the tokens seen so far, so that each decoding step computes them
# for its one new token only; each layer appends to its own part of it, on that layer's device.
#
# **Devices.** labkit takes what the machine has and says which pair it used and why: two GPUs
# (`cuda:0 + cuda:1`), or one GPU and the CPU, or with no GPU the CPU and the **meta** device, which every
# PyTorch build has. A meta tensor has a shape and a device but no data: a run over `cpu + meta` is a
# **placement check** (every step completes with every tensor where the map puts it), not a numeric run.
# With `gpus=N` the same scenarios run on N **virtual GPUs** instead, on any machine (section 1 shows how,
# and what they cannot show). Cells that need a real GPU say so and do nothing without one.

# %%
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import torch
from IPython.display import display

import labkit
from labkit import LivePlot, device_pair

pd.set_option("display.float_format", lambda x: f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}")  # 4 digits, no exponent
pd.set_option("display.max_colwidth", None)  # text (notes, errors) whole, not cut at 50 characters

mismatch, threaded = labkit.get("device-mismatch"), labkit.get("thread-device")
pair = device_pair()
print(f"this machine's pair: {pair}\nwhy: {pair.why}")

# %% [markdown]
# ## 1. A split model fails on its 2nd step
#
# ### First: which versions do what
#
# The failure depends on how transformers hands the cache to the model, so start there. accelerate's
# `send_to_device` moves tensors, tuples, lists, dicts, and any object with a `.to()`. transformers before
# its Cache classes (< 4.36) handed the cache over as per-layer `(key, value)` tuples, which it moves.
# transformers 5 hands over a `DynamicCache`, which has no `.to()`: the hook leaves it alone, and
# `generate` no longer fails this way (checked here on the versions below). To reproduce the mechanism on
# them, the trials hand the cache over as tuples and rebuild a `DynamicCache` inside the forward, as the
# 4.x releases from 4.36 on did (`legacy_cache_forward`, printed below).

# %%
import accelerate
import transformers
from accelerate.utils import send_to_device
from transformers import DynamicCache

from labkit.llm import upstream

legacy = ((torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4)),)
tuples_moved = send_to_device(legacy, "meta")[0][0]
cache_moved = upstream.cache_tensors(send_to_device(DynamicCache(legacy), "meta"))[0][0]
print("tuples moved to meta:      ", tuples_moved.device)
print("DynamicCache moved to meta:", cache_moved.device)

# %%
# NBVAL_CHECK_OUTPUT
print(f"transformers {transformers.__version__.split('.')[0]}.x, accelerate {accelerate.__version__.split('.')[0]}.x:",
      "tuples moved:", tuples_moved.is_meta, "| DynamicCache moved:", cache_moved.is_meta)

# %% [markdown]
# One more change matters: **the name of the argument**. `skip_keys` names forward arguments, and
# transformers 5.24 renamed the cache argument from `past_key_values` to `cache` (the old name still
# works, with a warning, until 5.40), and `_skip_keys_device_placement` with it. Code that still hands
# the cache over as `past_key_values=` on 5.24 gets it moved although `skip_keys` is set: the fix
# silently stops working. labkit's own trials did exactly that on the day 5.24 came out; they now read
# the name from the model (`labkit.llm.upstream.cache_argument`):

# %%
from labkit import tiny_model

print(f"transformers {transformers.__version__}: the forward takes the cache as {upstream.cache_argument(tiny_model())!r};",
      f"skip_keys = {upstream.skip_keys(tiny_model())}")

# %%
# NBVAL_CHECK_OUTPUT
print("the cache argument is one of the skip keys:", upstream.cache_argument(tiny_model()) in upstream.skip_keys(tiny_model()))

# %%
from labkit.scenarios.device_mismatch import legacy_cache_forward

labkit.show_code(legacy_cache_forward)

# %% [markdown]
# ### Reproduce
#
# Each trial saves the embedded tiny Qwen3 as a real checkpoint, builds the model's skeleton with
# `init_empty_weights`, plans a map with `get_balanced_memory` and `infer_auto_device_map`, loads the
# checkpoint and dispatches it (`load_checkpoint_in_model` then `dispatch_model`, which is what
# `load_checkpoint_and_dispatch` does), then decodes step by step. The variant and its trial:

# %%
labkit.variant_code(mismatch, "broken")

# %% [markdown]
# and `dispatched`, which the trial calls: the report's accelerate flow, where `skip_keys` reaches
# `dispatch_model`:

# %%
from labkit.scenarios.device_mismatch import dispatched

labkit.show_code(dispatched)

# %% [markdown]
# **Predict**: the first step has no cache yet. Which step fails, and in which operation?

# %%
live = LivePlot("device-mismatch / broken")
broken = labkit.run(mismatch, "broken", knobs=mismatch.quick, on_tick=live).trials[0]
live.show(broken)
print(broken.outcome, "|", broken.error)
for key, text in broken.notes.items():
    print(f"{key}: {text}")

# %%
# NBVAL_CHECK_OUTPUT
print("failed:", broken.outcome == "raised", "| steps completed before it:", int(broken.metrics["steps_completed"]))

# %% [markdown]
# ### Why: where each tensor lives at the failing step
#
# `dispatch_model` puts a hook on every part of the model that moves its inputs to the part's device,
# and one on the whole model that moves **every** input to the main device (the embeddings' device) and
# every output back to where the inputs were: the past keys and values included, unless their key is in
# `skip_keys`. Step 1 has no cache yet, so it passes; each layer makes its cache on its own device, and
# the top hook brings it all back to the main device with the outputs. On step 2 the layers on the other
# device `torch.cat` their new keys onto a cache on the main device: two devices in one op (on GPUs, the
# report's error). On `cpu + meta` nothing can come back from meta,
# so labkit turns the output move off, and the top hook's move of the cache to the CPU before step 2
# fails instead, because meta has no data to copy: same mechanism, one op earlier.
#
# Below, both models run step 1 in this kernel; then each top hook is asked what it would hand to step 2.

# %%
import tempfile

from labkit import save_tiny
from labkit.scenarios.device_mismatch import where_the_cache_goes

prompt = torch.tensor([[5, 6, 7, 8]])
rows = {}
with tempfile.TemporaryDirectory(prefix="labkit-nb02-") as folder:
    checkpoint = str(save_tiny(folder))
    for skip in (False, True):
        model, device_map, main = dispatched(checkpoint, "balanced", pair, skip_keys=skip)
        for what, devices in where_the_cache_goes(model, device_map, main, prompt).items():
            rows[what if what == "map says" else f"{what}, skip_keys={skip}"] = devices
pd.DataFrame(rows, index=[f"layer {i}" for i in range(len(rows["map says"]))])

# %% [markdown]
# ### The fix: `skip_keys`
#
# `skip_keys=model._skip_keys_device_placement` (for Qwen3, the cache argument printed above), passed to
# `dispatch_model` in `dispatched` above, tells the top hook to leave the cache where each layer made it. Each step of the fixed run checks that every layer's cache is
# on the device the map runs that layer on; with GPUs it also compares the tokens with a one-device run.

# %%
labkit.variant_diff(mismatch, "skip-keys")

# %%
fixed = labkit.run(mismatch, "skip-keys", knobs=mismatch.quick, monitor=False).trials[0]
print(fixed.outcome, "|", fixed.notes["check"])

# %%
# NBVAL_CHECK_OUTPUT
print("skip-keys:", fixed.outcome, "| steps:", int(fixed.metrics["steps_completed"]))

# %% [markdown]
# ### Four GPUs on this machine: virtual GPUs
#
# The reports' machines had several GPUs. `gpus=4` runs the same trial on four **virtual GPUs**, `cuda:0` to
# `cuda:3`, on any machine, this one included: accelerate's own loader, `dispatch_model` and hooks, and
# transformers' own forward and cache, run on them unchanged. A CPU build of torch cannot make a CUDA
# tensor, so labkit stands in for three things (`labkit.llm.virtual_gpus`): a tensor that says `cuda:k` and
# keeps its values on the CPU, the **device check** (CUDA's own is inside its kernels; labkit's raises torch's
# words and says, in the message, that it is the stand-in), and the driver's answers (device count, the
# current device of each thread, memory). Which tensor meets which, where, and when the cache moves is the
# libraries' own doing.
#
# Here the map is given row by row, so that all four GPUs hold a part: the embeddings and layer 0 on
# `cuda:0`, layers 1 and 2 on `cuda:1`, layer 3 on `cuda:2`, the norm and the head on `cuda:3`.

# %%
four_gpus = {**mismatch.quick, "gpus": 4, "device_map": "cuda:0,cuda:0,cuda:1,cuda:1,cuda:2,cuda:3,cuda:3"}
on_four = {v: labkit.run(mismatch, v, knobs=four_gpus, monitor=False).trials[0] for v in mismatch.variants}
print("map:", on_four["broken"].notes["map"])
print("broken:", on_four["broken"].error)
print("where:", on_four["broken"].notes["misplaced"])
pd.DataFrame({v: {"outcome": t.outcome, "steps": t.metrics["steps_completed"],
                  **{f"cuda:{i} peak MiB": round(t.metrics[f"peak_mib_cuda{i}"], 3) for i in range(4)}}
              for v, t in on_four.items()}).T  # no time: every op of a virtual GPU runs on the CPU

# %%
# NBVAL_CHECK_OUTPUT
print("broken:", on_four["broken"].outcome, "after", int(on_four["broken"].metrics["steps_completed"]), "step(s);",
      "cuda:0 and cuda:1 named:", "cuda:0 and cuda:1!" in on_four["broken"].error, "| skip-keys:", on_four["skip-keys"].outcome)

# %% [markdown]
# The same `torch.cat` in transformers' cache update fails, on step 2, as on the reports' GPUs; the fix
# decodes every step, and its tokens are those of a one-device CPU run. The table shows each GPU's peak
# memory and no time: every op of a virtual GPU runs on the CPU, so no time measured there is a GPU's.
#
# ### Your own model and map: `labkit.virtual_gpus`
#
# The same, for your own code: inside `with labkit.virtual_gpus(4, memory="24GiB")`, code written for
# four GPUs runs as it is. Here, transformers' `from_pretrained(..., device_map="auto")` plans the map with
# accelerate, loads and dispatches, and `generate` runs; afterwards each GPU's memory, and the tokens
# against the same model on the CPU.

# %%
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # no loading bars in the outputs
prompt = torch.tensor([[5, 6, 7, 8]])
with tempfile.TemporaryDirectory(prefix="labkit-nb02-") as folder:
    checkpoint = str(save_tiny(folder))
    with labkit.virtual_gpus(4, memory="24GiB") as gpus:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map="auto")  # your code, unchanged
        out = model.generate(prompt.to("cuda:0"), max_new_tokens=8, do_sample=False)
        print("transformers' map:", model.hf_device_map)
        print("tokens:", out.tolist(), "on", out.device)
    on_cpu = AutoModelForCausalLM.from_pretrained(checkpoint).generate(prompt, max_new_tokens=8, do_sample=False)
pd.DataFrame(gpus.memory())

# %%
# NBVAL_CHECK_OUTPUT
print("GPUs holding weights:", sorted(set(model.hf_device_map.values())), "| the CPU's tokens:", torch.equal(out.cpu(), on_cpu))

# %% [markdown]
# ### How full is each GPU, next to accelerate's estimate
#
# `labkit.llm.device_maps.map_memory` plans a map (here accelerate's balanced plan over four virtual GPUs of
# 24 GiB), loads, dispatches and generates, and reads each GPU's memory through `torch.cuda`'s own
# statistics. Beside it, accelerate's numbers: `planned` is its size of the weights the map puts on each
# GPU (`compute_module_sizes`, what `infer_auto_device_map` weighs against `max_memory`), and their total is
# what `accelerate estimate-memory` reports for inference (`calculate_maximum_sizes`).

# %%
from accelerate.utils import calculate_maximum_sizes

from labkit.llm.device_maps import empty_model, map_memory

with tempfile.TemporaryDirectory(prefix="labkit-nb02-") as folder:
    checkpoint = str(save_tiny(folder))
    per_gpu = pd.DataFrame(map_memory(checkpoint, gpus=4, memory="24GiB", new_tokens=32)).set_index("device")
    total, largest = calculate_maximum_sizes(empty_model(checkpoint))
kib = (per_gpu / 1024).round(1)
kib["peak - planned"] = kib["peak"] - kib["planned"]
print(f"accelerate estimate-memory: total {total / 1024:.1f} KiB, largest layer {largest[0] / 1024:.1f} KiB")
kib

# %%
from IPython.display import Markdown

used = per_gpu[per_gpu["planned"] > 0]
empty = [d for d in per_gpu.index if per_gpu.loc[d, "planned"] == 0]
Markdown((f"accelerate's plan left {', '.join(f'`{d}`' for d in empty)} without weights: on the first GPU it keeps "
          f"room for the largest layer ({largest[0] / 1024:.1f} KiB) in case weights are offloaded, and with this tiny "
          f"model that room takes the first GPU's whole balanced share. " if empty else "")
         + f"Where the map put weights, the virtual GPUs held {(used['loaded'] - used['planned']).sum() / 1024:.1f} KiB "
         f"more than accelerate's sizes once loaded (each tensor is rounded up to 512 bytes, as CUDA's allocator "
         f"rounds it: a norm's 64 floats take a whole block), and at their peaks "
         f"{(used['peak'] - used['planned']).sum() / 1024:.1f} KiB more: the KV cache "
         f"({used['kv_cache'].sum() / 1024:.1f} KiB at the end) and the activations, which accelerate's plan does not "
         f"count. Plan with room for them: a `max_memory` below each GPU's size.")

# %% [markdown]
# On a real GPU more differs: the CUDA context and cuBLAS's workspace take memory no tensor of the model
# holds, attention kernels allocate their own scratch, and the caching allocator reserves more than it
# allocates. The GPU-only cell below sets the virtual numbers against a real GPU's.

# %%
if torch.cuda.is_available() and torch.version.cuda is not None:
    with tempfile.TemporaryDirectory(prefix="labkit-nb02-") as folder:
        checkpoint, one_gpu = str(save_tiny(folder)), ",".join(["cuda:0"] * 7)
        both = [*map_memory(checkpoint, one_gpu, gpus=1), *map_memory(checkpoint, one_gpu, real=True)[:1]]
    display(pd.DataFrame(both, index=["virtual cuda:0", "real cuda:0"]))
else:
    print("no GPU here: the comparison with a real GPU needs one (tests/test_virtual_gpus.py, marker gpu)")

# %% [markdown]
# ### Too full: CUDA's out-of-memory, on the GPU that overflows
#
# Each virtual GPU has a capacity (`gpu_memory`). A tensor that would not fit raises torch's
# `OutOfMemoryError` in CUDA's words, naming the GPU, at the op that allocates it. Below, two virtual GPUs
# of `700KiB`: the second holds layers 1 to 3, the norm and the head. Its weights fit; the first forward's
# activations do not.

# %%
too_full = {**mismatch.quick, "gpus": 2, "gpu_memory": "700KiB", "device_map": "cuda:0,cuda:0,cuda:1,cuda:1,cuda:1,cuda:1,cuda:1"}
oom = labkit.run(mismatch, "skip-keys", knobs=too_full, monitor=False).trials[0]
print(oom.error)
print(oom.notes["memory"])

# %%
# NBVAL_CHECK_OUTPUT
print(oom.outcome, "|", oom.error.split(":")[0], "| on GPU 1:", "GPU 1 has a total capacity" in oom.error,
      "| steps completed:", int(oom.metrics["steps_completed"]))

# %% [markdown]
# ### What a virtual GPU cannot show
#
# Everything that happens inside CUDA: its kernels (their own checks, numerics and errors), streams and the
# races between them, NCCL and anything between processes, the CUDA context and cuBLAS workspaces, memory
# reserved but not allocated and fragmentation, and speed. Every op runs on the CPU behind a Python call, so
# no time is reported from a virtual GPU. What it shows is what the libraries' own code does with several
# devices: where each tensor goes, which meet, and how much each device holds.
#
# ### Play: edit the device map
#
# A row per part of the model, each with its device. **GPUs** picks this machine's devices or 1 to 8
# virtual GPUs (four here), `gpu_memory` their size; **balanced** fills the rows from accelerate's planner;
# tick `skip_keys` for the fix; press Run. Each run adds a row to the table. Try: move the split later or
# earlier; put every row on one GPU; shrink `gpu_memory` until a run fails; leave a row blank. With this
# machine's devices and no GPU, put a row back on the CPU after a meta row (nothing comes back from meta, so
# that map is refused with a message). Note that accelerate treats `cpu` behind a GPU main device as
# *offload* (weights kept on the CPU, run on the GPU), so such a map never fails.

# %%
from labkit import device_map_panel

device_map_panel(gpus=4)

# %% [markdown]
# ## 2. The device belongs to the thread
#
# `torch.set_default_device`, `with torch.device(...)` and `torch.cuda.set_device` all change the calling
# thread only. A thread started later begins on the CPU default and on `cuda:0`:

# %%
# NBVAL_CHECK_OUTPUT
with torch.device("meta"), ThreadPoolExecutor(1) as pool:
    here = torch.empty(1).device
    there = pool.submit(lambda: torch.empty(1).device).result()
print(f"inside `with torch.device('meta')`: main thread makes {here}, a worker thread makes {there}")

# %% [markdown]
# ### Reproduce
#
# The broken variant makes the model under the context in the main thread (here `set_default_device`),
# then decodes in a worker thread, whose new tensors follow its own default. On two GPUs the context is
# `torch.cuda.set_device(1)`: `"cuda"` is `cuda:1` in the main thread and `cuda:0` in the worker, the
# report's own error. On `cpu + meta` the embedding's meta kernel checks no devices (CPU ids in, meta out),
# so labkit's placement check is what raises: forward pre-hooks that compare each module's inputs with
# its weights and **name** them.

# %%
labkit.variant_code(threaded, "broken")

# %% [markdown]
# What every variant of it shares, `_Setup` (the devices, the context, the prompt): the model and its
# prompt made under the context, and the decode in a worker thread.

# %%
from labkit.scenarios import thread_device

display(labkit.show_code(thread_device._Setup.under_context), labkit.show_code(thread_device._Setup.decode_in_worker))

# %%
live = LivePlot("thread-device / broken")
t_broken = labkit.run(threaded, "broken", knobs=threaded.quick, on_tick=live).trials[0]
live.show(t_broken)
print(t_broken.outcome, "|", t_broken.error)
print(t_broken.notes["check"])

# %%
# NBVAL_CHECK_OUTPUT
print("failed:", t_broken.outcome == "raised", "| steps completed:", int(t_broken.metrics["steps_completed"]))

# %% [markdown]
# ### The check, for your own code
#
# `labkit.check_same_device(**tensors)` returns the one device they share or raises naming each
# tensor; `labkit.llm.devices.placement_check(model)` installs it as a pre-hook on every module with weights.

# %%
# NBVAL_CHECK_OUTPUT
from labkit import DeviceMismatch, check_same_device

try:
    check_same_device(input_ids=torch.tensor([[1, 2]]), weight=torch.empty(4, 4, device="meta"))
except DeviceMismatch as exc:
    print(exc)

# %% [markdown]
# ### The fixes
#
# * `explicit-device`: name the device index everywhere (`model.to("cuda:1")`, `device="cuda:1"` for every
#   tensor); no context is needed at all.
# * `same-thread`: enter the context, make the model and its inputs, and generate, all in one thread.

# %%
display(labkit.variant_diff(threaded, "explicit-device"), labkit.variant_diff(threaded, "same-thread"))

# %%
t_fixes = {v: labkit.run(threaded, v, knobs=threaded.quick, monitor=False).trials[0] for v in threaded.fixes}
labkit.variants_table(t_fixes, digits=2)

# %%
# NBVAL_CHECK_OUTPUT
print({v: (t.outcome, int(t.metrics["steps_completed"])) for v, t in t_fixes.items()})

# %% [markdown]
# ### GPU only: the report's exact message
#
# With two GPUs, `context=cuda.set_device` reproduces the outlines report's message word for word. Without them this cell says
# so and does nothing.

# %%
if torch.cuda.device_count() >= 2:
    gpu = labkit.run(threaded, "broken", knobs={**threaded.quick, "context": "cuda.set_device"}, monitor=False)
    print(gpu.trials[0].error)
else:
    print(f"{torch.cuda.device_count()} GPU(s) here: needs two")

# %% [markdown]
# ### On two virtual GPUs, on any machine
#
# With `gpus=2` the trial makes the choice it makes on two real GPUs: the main thread calls
# `torch.cuda.set_device(1)`, so `"cuda"` is `cuda:1` there and `cuda:0` in the worker. The current CUDA
# device of each thread is labkit's stand-in here (kept per thread, as the CUDA runtime keeps it: a new
# thread starts on device 0), and so is the check that raises; the threads, the model and its forward are
# real.

# %%
t_virtual = {v: labkit.run(threaded, v, knobs={**threaded.quick, "gpus": 2}, monitor=False).trials[0]
             for v in ("broken", "explicit-device")}
print(t_virtual["broken"].error)

# %%
# NBVAL_CHECK_OUTPUT
print("the report's devices:", "cuda:0 and cuda:1!" in t_virtual["broken"].error, "| explicit-device:",
      t_virtual["explicit-device"].outcome)

# %% [markdown]
# ### Play
#
# `devices` is `auto` or two devices `A,B` (A: where a new thread's tensors land, `cpu` or `cuda:0`; B: the
# context's device); `context` is how the main thread sets it; `gpus` runs it on that many virtual GPUs
# (0: this machine's devices).

# %%
from labkit import panel

panel("thread-device", knobs=["devices", "context", "tokens", "gpus"])

# %% [markdown]
# ### Exercise
#
# 1. In the device-map panel, press **balanced**, then move the split one layer earlier and run `broken`
#    and then with `skip_keys`. Does the failing step change?
# 2. Put every row on the same device and run without `skip_keys`. What happens, and why?
# 3. With two virtual GPUs, put every row but the head on `cuda:0`, tick `skip_keys`, and lower `gpu_memory`
#    until a run fails. Which GPU fails, and does it fail while loading or while decoding?
#
# <details><summary>Solution</summary>
#
# 1. No: wherever the split is, step 1 has no cache and passes, and step 2 is the first that meets a
#    moved cache. `skip_keys` fixes every split.
# 2. It runs clean: with one device the top hook moves the cache to where it already is. The bug needs a
#    model split over two devices, which is why it hides on a one-GPU test machine.
# 3. `cuda:0`, which holds most of the weights: first while decoding (its weights fit, the activations of
#    the first forward do not, `steps_completed` 0), then, smaller still, while loading (no step at all).
#    accelerate's plan would not have warned: it counts weights only.
#
# </details>
#
# ### Exercise: write the fix
#
# The failure in small: the main thread sets its default device (`pair.second`, `meta` here) and makes
# the model under it; a worker thread makes the input and runs the model. `my_worker_input(model, prompt)`
# is the line the worker runs to make its input, and as it stands it makes it where the broken variant
# does. Change it so that the model can take it, without any context in the worker.
#
# The check after it runs that small trial isolated (a default device set in the check's own process
# would stay set), up to three times, stopping at the first that fails. As the cell stands, it does not
# hold.

# %%
def my_worker_input(model, prompt):
    """Runs in the worker thread: the prompt's token ids, as a tensor the model can take."""
    return torch.tensor([prompt])  # as the broken variant makes it: change it


# %%
from labkit.llm.devices import placement_check


def in_a_worker(make_input):
    """The failure in small: the model made under the main thread's default device, its input made in a worker."""

    def made_here_used_there(**knobs):
        pair = labkit.device_pair()  # cpu + meta here; two GPUs where there are two
        torch.set_default_device(pair.second)  # the main thread's context
        model = labkit.tiny_model()  # made under it
        placement_check(model)  # every module names an input that is not on its weights' device
        with ThreadPoolExecutor(1) as worker:
            worker.submit(lambda: model(make_input(model, [5, 6, 7, 8]))).result()
        return {"steps_completed": 1.0}

    return made_here_used_there


print(labkit.try_variant(threaded, in_a_worker(my_worker_input)))

# %% [markdown]
# A worked solution is folded in the next cell (unfold it with the bar on its left, after you tried); its
# output is the same check, run on it.

# %% solution
# NBVAL_CHECK_OUTPUT
def on_the_model_s_device(model, prompt):
    """A solution: name the device, the model's own, where the worker makes the tensor."""
    return torch.tensor([prompt], device=model.device)


print(labkit.try_variant(threaded, in_a_worker(on_the_model_s_device)))

# %% [markdown]
# <details><summary>Why it holds</summary>
#
# `torch.tensor([prompt])` follows the calling thread's default device, and the worker never set one:
# CPU. `device=model.device` names the device the weights are on, whichever thread runs it: the
# `explicit-device` fix in one line. Setting the default device in the worker as well (the `same-thread`
# fix's way) would hold too, but it is one more per-thread setting to forget in the next thread.
#
# </details>
#
# ## 3. A compile setting that belongs to the thread
#
# This failure comes from PyTorch itself, reported against its 2.12 release:
#
# > torch 2.12 regression: torch.compile thread-local config. Since
# > [pull request 173568](https://github.com/pytorch/pytorch/pull/173568) torch dynamo config is
# > thread-local. `torch._dynamo.config.cache_size_limit` default is 8, which is quite low if you have a
# > couple of different shapes in a transformer. With `fullgraph=True`, this is a failure.
# > ([pytorch issue 186537](https://github.com/pytorch/pytorch/issues/186537), open)
#
# **Terms.** `torch.compile` hands a function to *dynamo*, which traces it into a graph for a backend.
# With `dynamic=False` (what CUDA graphs need) every new input shape is a *recompile*: a new graph. After
# `recompile_limit` of them (8 by default) dynamo stops compiling that function: with `fullgraph=True` it
# raises, without it the function silently runs uncompiled. A server whose batches come in many sizes
# raises the limit, as PyTorch's recompilation guide says, once, in its main thread.
#
# The scenario `compile-threads` does exactly that, then serves batch sizes 1 to 12 from a thread pool.
# The compiled function is a server's sampling step (softmax and a draw), not the whole model, and the
# backend is dynamo's eager one: compiling the model 12 times would take minutes on 2 cores, and the
# failure is in dynamo's config, whatever it compiles.
#
# **Predict**: the main thread set the limit to 64. What does the serving thread see?

# %%
compiled = labkit.get("compile-threads")
labkit.variant_code(compiled, "broken")

# %%
compile_runs = labkit.run(compiled, "broken", monitor=False)
t_compile = compile_runs.trials[0]
compile_runs.to_frame()

# %%
# NBVAL_CHECK_OUTPUT
print(t_compile.outcome, "|", t_compile.error.split(":")[0], "| graphs:", int(t_compile.metrics["graphs"]))
print(t_compile.notes["limit"])

# %% [markdown]
# ### Why: the setting lives in the thread
#
# dynamo keeps what you set in a `ContextVar`, and a new thread starts with an empty context, so it reads
# the default. Three lines of torch show it, with no labkit at all:

# %%
# NBVAL_CHECK_OUTPUT
import threading

import torch._dynamo

torch._dynamo.config.recompile_limit = 64
seen = []
reader = threading.Thread(target=lambda: seen.append(torch._dynamo.config.recompile_limit))
reader.start()
reader.join()
print(f"main thread {torch._dynamo.config.recompile_limit}, new thread {seen[0]}")
torch._dynamo.config.recompile_limit = 8  # back to the default, for the rest of this kernel

# %% [markdown]
# ### The fixes
#
# * `thread-config`: each pool thread sets the limit itself when it starts (the pool's `initializer`).
# * `copy-context`: the main thread copies its context after setting the limit, and the pool thread runs the
#   work inside that copy (`contextvars.copy_context().run`).
# * `mark-dynamic`: mark the batch dimension dynamic, so that one graph serves every batch size and no limit
#   is ever reached.

# %%
display(labkit.variant_diff(compiled, "thread-config"), labkit.variant_diff(compiled, "copy-context"),
        labkit.variant_diff(compiled, "mark-dynamic"))

# %%
t_compiled = {v: labkit.run(compiled, v, monitor=False).trials[0] for v in compiled.fixes}
labkit.variants_table(t_compiled, digits=2, notes=True)

# %%
# NBVAL_CHECK_OUTPUT
print({v: (t.outcome, int(t.metrics["graphs"]), int(t.metrics["shapes_uncompiled"])) for v, t in t_compiled.items()})

# %% [markdown]
# `mark-dynamic` compiles two graphs, not one: dynamo specialises a size of 1, so batch size 1 gets its own.
# With `fullgraph=False` (`--set fullgraph=false`) the broken variant does not raise: the batch sizes past the
# limit (its `shapes_uncompiled` above) run uncompiled, and the trial ends `wrong`. `labkit doctor` probes
# whether your torch keeps dynamo's config per thread (its `compile-threads` row).
#
# ## In your own code
#
# * Dispatching a model yourself: `dispatch_model(model, device_map, skip_keys=model._skip_keys_device_placement)`
#   (what `from_pretrained(..., device_map=...)` does for you).
# * After upgrading transformers, check that the name in `skip_keys` is still the name your code passes the
#   cache by (`past_key_values` became `cache` in 5.24).
# * Make tensors in the thread that uses them, or name the device index everywhere (`"cuda:1"`, never a
#   bare `"cuda"` that means another GPU in another thread).
# * Where two devices meet, check before the op: `labkit.check_same_device(**tensors)` names each tensor.
# * Before renting a multi-GPU machine, dry-run your map on virtual GPUs: `with labkit.virtual_gpus(4,
#   memory="80GiB") as gpus:` around your own loading and `generate`, then `gpus.memory()`. It shows where
#   tensors meet and how full each GPU gets, not how fast it will be.
# * `torch._dynamo.config` set in the main thread does not reach a thread pool (torch 2.12 and later): set
#   it in each serving thread, or run the work in `contextvars.copy_context()`; better, mark the dynamic
#   dimensions so that fewer graphs are needed.
