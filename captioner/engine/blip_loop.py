"""The decode loop: prefill, then one step per token; on CUDA each step is a graph replayed per batch-size bucket."""

from __future__ import annotations

import threading

import torch

from .blip_search import BeamState, DecodePlan, GreedyState, beam_step, greedy_step
from .blip_towers import TextDecoder

IMAGE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)
CHECK_EVERY_CUDA = 4  # reading the stop flag waits for the GPU, so a CUDA loop reads it every few steps only
# One capture at a time in the process (two engines may capture at once: the go-live check beside the live one),
# on streams of their own: torch.cuda.Stream() hands out a pool's streams in turn, so a decoding thread's stream
# could be the one under capture, and its kernels would be recorded into the graph. The high-priority pool is
# used by nothing else here.
_CAPTURE_LOCK = threading.Lock()
_CAPTURE_STREAMS: dict[int, object] = {}


def _capture_stream(device: torch.device):
    """This device's stream for warm-ups and captures (made once)."""
    if device.index not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[device.index] = torch.cuda.Stream(device, priority=-1)  # clamped to the highest there is
    return _CAPTURE_STREAMS[device.index]


class Slot:
    """The buffers, search state and (on CUDA) captured step for one padded batch shape."""

    def __init__(self, text: TextDecoder, kv, image_kv, images: int, beams: int, length: int, rules):
        self.text, self.kv, self.image_kv = text, kv, image_kv
        self.images, self.beams, self.length, self.rules = images, beams, length, rules
        device = kv.device
        self.state = GreedyState(images, length, device) if beams == 1 else BeamState(images, beams, length, device)
        self.graph = None
        self.graph_bytes = 0

    def search(self, logits) -> None:
        """Choose the next tokens from these logits [rows, V]; beams move their cache rows with them."""
        if self.beams == 1:
            greedy_step(self.state, logits, self.rules)
        else:
            beam_step(self.state, logits, self.rules)
            self.kv.copy_(self.kv.index_select(1, self.state.parents))

    def step(self) -> None:
        """Feed the last tokens and search: only device tensors, so this is what a CUDA graph captures."""
        self.search(self.text.step(self.state.last, self.state.cur - 1, self.image_kv, self.kv))

    def capture(self, plan: DecodePlan) -> None:
        """Record step() as a CUDA graph, after warming it up on the capture stream with a dummy prompt."""
        device = self.kv.device
        with _CAPTURE_LOCK, torch.cuda.device(device):  # the graph belongs to the model's GPU, not the thread's
            dummy = torch.full((self.images, 1), plan.rules.pad, dtype=torch.long, device=device)
            self.state.start(dummy, DecodePlan((plan.rules.pad,), self.length, 0, 1.0, 1.0, plan.rules))
            side = _capture_stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.step()
            torch.cuda.current_stream(device).wait_stream(side)
            # torch.cuda.graph empties the allocator's cache as it starts: measure from an emptied cache too,
            # so what the capture adds is its private pool, not the activations the cache let go of
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_reserved(device)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the engine's other threads (image decoding on the GPU) may keep working during a capture
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                self.step()
            self.graph = graph
            self.graph_bytes = max(0, torch.cuda.memory_reserved(device) - before)

    def results(self, valid: int, prompt_len: int) -> list[tuple[list[int], float]]:
        """(prompt + generated ids, mean raw log-probability of the generated ones) for the first `valid` images."""
        state = self.state
        if self.beams == 1:
            seqs, lengths, raw = state.seqs[:valid], state.generated[:valid], state.raw_sum[:valid]
        else:
            seqs, lengths, raw = state.fin_seqs[:valid, 0], state.fin_len[:valid, 0], state.fin_raw[:valid, 0]
        seqs, lengths, raw = seqs.tolist(), lengths.tolist(), raw.tolist()
        return [(row[: prompt_len + n], total / max(n, 1)) for row, n, total in zip(seqs, lengths, raw)]


class DecodeLoop:
    """Runs decodes for one model: exact-size eager buffers on the CPU; on CUDA, buckets with lazily captured graphs."""

    def __init__(self, text: TextDecoder, device, dtype, *, bucketed: bool, cuda_graphs: bool, memory_limit: int | None):
        self.text, self.device, self.dtype = text, torch.device(device), dtype
        if self.device.type == "cuda" and self.device.index is None:  # torch.cuda's memory calls want an index
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.bucketed = bucketed
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        if memory_limit is None and self.device.type == "cuda":
            memory_limit = torch.cuda.get_device_properties(self.device).total_memory // 4
        self.memory_limit = memory_limit or 0
        self.arenas: dict[tuple, tuple] = {}  # (beams, length, image tokens) -> (capacity, kv, image_kv)
        self.slots: dict[tuple, Slot] = {}
        self.check_every = CHECK_EVERY_CUDA if self.device.type == "cuda" else 1  # steps between stop-flag reads
        self.lock = threading.Lock()
        self.stats = {"graph_captures": 0, "graph_replays": 0, "eager_steps": 0, "eager_fallbacks": 0, "weight_moves": 0}
        modules = (text.embeddings, *text.layers, text.head)  # (adapter layers are refused before a decode: blip_support)
        self._params = [param for module in modules for param in module.parameters()]
        self._weights = self._weight_addresses()

    def pinned_bytes(self) -> int:
        """Memory held between decodes: bucket buffers and captured graphs."""
        arenas = sum(kv.numel() * kv.element_size() + ikv.numel() * ikv.element_size() for _, kv, ikv in self.arenas.values())
        return arenas + sum(slot.graph_bytes for slot in self.slots.values())

    def run(self, image_embeds: torch.Tensor, plan: DecodePlan) -> list[tuple[list[int], float]]:
        """Decode every image [B, S, D] with this plan; a batch over the largest bucket goes through in chunks."""
        largest = IMAGE_BUCKETS[-1]
        if self.bucketed and image_embeds.shape[0] > largest:
            chunks = [image_embeds[start : start + largest] for start in range(0, image_embeds.shape[0], largest)]
            return [out for chunk in chunks for out in self.run(chunk, plan)]
        with self.lock:
            self._forget_moved_weights()
            return self._run(image_embeds, plan)

    def _weight_addresses(self) -> tuple[int, ...]:
        """Where the text decoder's weights live: a captured graph reads them there (20 us for BLIP-base)."""
        return tuple(map(torch.Tensor.data_ptr, self._params))

    def _forget_moved_weights(self) -> None:
        """Drop the slots (and their graphs) when a weight was given new memory since they were made: finetune's
        merge of trained token rows assigns new embedding data, and a graph would replay reads of the freed one."""
        if not self.bucketed:
            return  # exact-size slots are made per call
        addresses = self._weight_addresses()
        if addresses != self._weights:
            self._weights = addresses
            self.slots.clear()
            self.stats["weight_moves"] += 1

    def _run(self, image_embeds, plan: DecodePlan):
        valid, image_tokens = image_embeds.shape[:2]
        beams, prompt_len = plan.rules.beams, len(plan.prompt)
        slot = self._slot(valid, image_tokens, plan)
        prompt = torch.tensor([plan.prompt], dtype=torch.long, device=self.device).expand(valid, -1)
        slot.state.start(prompt, plan)
        self.text.cross_kv(image_embeds, slot.image_kv)
        logits = self.text.prefill(prompt, slot.image_kv, slot.kv, beams)
        if beams > 1:
            logits = logits.repeat_interleave(beams, dim=0)
        rows = slot.images * beams
        if rows > logits.shape[0]:  # bucket padding rows: their choices are ignored and never stop the batch
            logits = torch.cat((logits, logits.new_zeros(rows - logits.shape[0], logits.shape[1])))
        slot.search(logits)
        cur, steps = prompt_len + 1, 1
        while steps < plan.max_len - prompt_len:
            if cur - 1 >= self.text.max_positions:  # the next step needs a position embedding the model lacks
                if not bool(slot.state.done):
                    raise ValueError(
                        f"the prompt ({prompt_len - 1} tokens) plus max new tokens need {plan.max_len - 1} positions; "
                        f"this model has {self.text.max_positions}"
                    )
                break
            if steps % self.check_every == 0 and bool(slot.state.done):
                break
            if slot.graph is not None:
                slot.graph.replay()
                self.stats["graph_replays"] += 1
            else:
                slot.step()
                self.stats["eager_steps"] += 1
            cur, steps = cur + 1, steps + 1
        return slot.results(valid, prompt_len)

    def _slot(self, valid: int, image_tokens: int, plan: DecodePlan) -> Slot:
        """The bucket slot for this batch (capturing its graph on first use), or exact-size buffers for this call."""
        needed = min(plan.max_len, self.text.max_positions + 1)
        if not self.bucketed:
            return self._fresh_slot(valid, image_tokens, needed, plan)
        images = next(b for b in IMAGE_BUCKETS if b >= valid)
        length = next((b for b in LENGTH_BUCKETS if b >= needed), needed)
        key = (images, length, image_tokens, plan.rules)
        slot = self.slots.get(key)
        if slot is None:
            arena = self._arena(plan.rules.beams, length, image_tokens, images)
            if arena is None:
                self.stats["eager_fallbacks"] += 1
                return self._fresh_slot(valid, image_tokens, needed, plan)
            _, kv, image_kv = arena
            beams = plan.rules.beams
            slot = Slot(self.text, kv[:, : images * beams], image_kv[:, :images], images, beams, length, plan.rules)
            if self.cuda_graphs and self._fits(self._graph_estimate(slot)):
                slot.capture(plan)
                self.stats["graph_captures"] += 1
            elif self.cuda_graphs:
                self.stats["eager_fallbacks"] += 1
            self.slots[key] = slot
        return slot

    def _fresh_slot(self, images: int, image_tokens: int, length: int, plan: DecodePlan) -> Slot:
        kv, image_kv = self._buffers(images, plan.rules.beams, length, image_tokens)
        return Slot(self.text, kv, image_kv, images, plan.rules.beams, length, plan.rules)

    def _buffers(self, images: int, beams: int, length: int, image_tokens: int):
        text = self.text
        layers = 2 * len(text.layers)
        # zeros, not empty: masked cache slots still meet the attention weights, and 0 * NaN would be NaN
        kv = torch.zeros(layers, images * beams, text.heads, length, text.head_dim, dtype=self.dtype, device=self.device)
        image_kv = torch.zeros(layers, images, text.heads, image_tokens, text.head_dim, dtype=self.dtype, device=self.device)
        return kv, image_kv

    def _arena(self, beams: int, length: int, image_tokens: int, images: int):
        """Shared buffers for every bucket of this shape, grown to `images`; growing drops the graphs on the old ones."""
        key = (beams, length, image_tokens)
        arena = self.arenas.get(key)
        if arena is not None and arena[0] >= images:
            return arena
        text = self.text
        size = 2 * len(text.layers) * images * text.heads * text.head_dim * (beams * length + image_tokens)
        old = 0 if arena is None else arena[1].numel() * arena[1].element_size() + arena[2].numel() * arena[2].element_size()
        if self.device.type == "cuda" and not self._fits(size * torch.finfo(self.dtype).bits // 8 - old):
            return None
        if arena is not None:  # let the old buffers go before making the new ones (_fits counted them as freed)
            self.arenas.pop(key)
            for slot_key in [k for k, s in self.slots.items() if (s.beams, s.length, k[2]) == key]:
                self.slots.pop(slot_key)
            del arena
        arena = (images, *self._buffers(images, beams, length, image_tokens))
        self.arenas[key] = arena
        return arena

    def _graph_estimate(self, slot: Slot) -> int:
        """A generous guess of a captured step's private memory: several [rows, vocab] float32 tensors, the
        reordered copy of the cache (beam search) and the sequences gathered per candidate."""
        rows = slot.images * slot.beams
        vocab = self.text.head.decoder.weight.shape[0]
        cache_copy = slot.kv.numel() * slot.kv.element_size() if slot.beams > 1 else 0
        return rows * vocab * 4 * 8 + cache_copy + rows * slot.length * 8 * 16

    def _fits(self, extra: int) -> bool:
        """Whether `extra` more pinned bytes stay within the memory limit and leave the GPU room to work."""
        if self.device.type != "cuda":
            return True
        free, total = torch.cuda.mem_get_info(self.device)
        return self.pinned_bytes() + extra <= self.memory_limit and free - extra >= total // 10
