"""Memory per GPU and traffic per optimizer step of a training job, for each sharding scope of the
frozen backbone, worked out before the job starts (``adept-plan``, adept_dist/commands/plan.py).

A model of what adept-dist runs (DeepSpeed 0.19.8, bitsandbytes NF4, transformers' LLaMA), checked
against measured runs by bench/bench_plan.py and tests/test_plan.py. Arithmetic on the config's
sizes: no DeepSpeed, no model is built.

Memory per GPU: the bytes the framework allocates at the step's peak (CUDA context, NCCL's buffers
and the allocator's fragmentation are left to the headroom):

- backbone: NF4 linears hold 2 weights a byte, stored as compute-dtype elements (bytes / itemsize;
  quant_storage = compute dtype); embedding, output head and norms stay in the compute dtype.
  ZeRO-3 (global, node) keeps ceil(n / G) elements of each parameter on each of the G ranks of its
  group, and parameters of at most stage3_param_persistence_threshold elements whole (and their
  partition); none keeps everything.
- quantisation statistics: per 64-weight block an absmax, double-quantised to one byte, with an
  fp32 absmax per 256 blocks and the code tables; a Python attribute, not a Parameter, so every rank
  holds all of them whatever the scope.
- gathered parameters: ZeRO-3's all-gathered whole tensors alive at once, from a simulation of
  DeepSpeed's parameter coordinator (`simulate`), and the largest linear de-quantised for its matmul.
- activations: what autograd keeps for the backward to the inputs (frozen NF4 linears keep none of
  their inputs): per decoder layer the norms' fp32 inputs, attention's q, k, v (repeated to every
  head: a mask turns transformers' GQA path off), output, softmax statistics and the mask as an
  additive bias, the MLP's gate, SiLU and up outputs; with activation checkpointing each layer's
  input only, and one layer recomputed at a time. Plus the logits at the target tokens in fp32.
- adapter and Adam: compute-dtype copies, fp32 masters, gradients and the two moments, each
  partitioned over all ranks; DeepSpeed's reduce bucket (reduce_bucket_size elements), held by
  ZeRO-3 throughout, by ZeRO-2 only from the adapter's gradients to the backward's end (two with
  overlap_comm, a double buffer).

Traffic per optimizer step: the bytes each rank receives from ranks of its own node and of other
nodes, in the ring volumes traffic.py counts (all-gather: the peer's shard; reduce-scatter: the
output; all-reduce: 2 x size / n; from each peer): ZeRO-3's gathers (`simulate`), the adapter's
gradients, the trainer's full_grads, the persistent parameters DeepSpeed gathers after each
optimizer step, the loss. A run's first step gathers more (`LayoutPlan.first_step`).

Not modelled: activation checkpointing's recompute also gathers a layer's attention parameters
again where they are still alive (measured on a 2-layer model: +9% of its gathers; a large model
has released them by then, and the plan counts that gather); with grad_accum > 1 the first step's
later micro-batches gather the persistent parameters once more.
"""
