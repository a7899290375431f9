"""The frozen-feature cache: the frozen ViT of Figure 2 runs once per image or video over a run.

Both stages train only what comes after the frozen encoder, so its features can be computed once
and reused every epoch. At real size they are large (SigLIP-so400m: about 3.4 MB per COCO image in
fp32), so the cache keeps them in bf16 and holds at most a budget (`--feature-cache-gb`), dropping
the least recently used first.
"""

from collections import OrderedDict

import torch


class FeatureCache:
    """Frozen-encoder features per (modality, id), so the encoder runs once per image or video over
    all epochs: in bf16 (half of fp32; the adapter's input is rounded to it, as under bf16
    autocast), on the CPU, at most max_bytes (the least recently used go first; None: no bound).
    Valid only while the encoder stays frozen and images are not augmented; ids must be unique
    within a modality across the splits sharing a cache (they are in COCO and in the synthetic
    world)."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes, self.bytes = max_bytes, 0
        # oldest use first
        self.features: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.features)

    def describe(self) -> str:
        budget = "unbounded" if self.max_bytes is None else f"at most {self.max_bytes / 2**30:g} GB"
        return (
            f"feature cache: {budget}, bf16 on the CPU, frozen-ViT features per (image or video, "
            "id), "
            "least recently used evicted"
        )

    def get_or_compute(
        self, image_ids: list[int], pixels: torch.Tensor, encode_fn, num_frames=None
    ) -> torch.Tensor:
        """encode_fn maps pixels (n, ...) to features (n, ...); returns features (B, ...) on pixels'
        device, in fp32. Videos (B, T, ...) keep their num_frames[row] real frames only
        and come back padded with zero frames to the batch's T, as collate padded their pixels."""
        modality = "video" if num_frames is not None or pixels.dim() == 5 else "image"
        keys = [(modality, image_id) for image_id in image_ids]
        missing = {}  # key -> its first row in the batch
        for row, key in enumerate(keys):
            if key not in self.features:
                missing.setdefault(key, row)
        found = {key: self.features[key] for key in keys if key in self.features}
        if missing:
            with torch.no_grad():
                computed = encode_fn(pixels[list(missing.values())])
            for (key, row), features in zip(missing.items(), computed):
                if num_frames is not None:
                    features = features[: int(num_frames[row])]
                # copy: not a view of the batch
                found[key] = features.detach().to("cpu", torch.bfloat16, copy=True)
        frames = pixels.shape[1] if modality == "video" else None
        return self.use(keys, found, frames).to(pixels.device, torch.float32)

    def lookup(self, keys: list[tuple[str, int]]) -> list[torch.Tensor] | None:
        """The features of every (modality, id) key, or None if one is not cached. Reading only:
        the order of use is left alone, and `fetched` updates it when the batch is trained on, as
        get_or_compute would have."""
        if all(key in self.features for key in keys):
            return [self.features[key] for key in keys]
        return None

    def fetched(
        self, image_ids: list[int], features: list[torch.Tensor], num_frames, device
    ) -> torch.Tensor:
        """A batch whose pixels were never decoded (data.VisionTextDataset.__getitems__): the
        features `lookup` gave when it was fetched -> (B, ...) as get_or_compute returns them, and
        marked used as get_or_compute marks them, so the same entries are evicted as in a run that
        decodes every batch. The batch holds the features, not just their keys, so an entry evicted
        after the fetch (an earlier micro-batch of the same step encoding new images) is put back,
        not lost."""
        keys = [("image" if num_frames is None else "video", image_id) for image_id in image_ids]
        frames = None if num_frames is None else int(num_frames.max())
        return self.use(keys, dict(zip(keys, features)), frames).to(device, torch.float32)

    def use(self, keys, found: dict, frames: int | None) -> torch.Tensor:
        """The rows of a batch (B, ...) in bf16, each marked used; videos padded to `frames`."""
        for key in keys:  # newest use last; then evict from the oldest
            self.store(key, found[key])
        rows = [found[key] for key in keys]
        if frames is not None:  # (B, T, ...) padded back to the batch's T
            rows = [
                torch.cat([row, row.new_zeros(frames - len(row), *row.shape[1:])]) for row in rows
            ]
        return torch.stack(rows)

    def store(self, key, features: torch.Tensor):
        if key in self.features:
            self.features.move_to_end(key)
            return
        size = features.numel() * features.element_size()
        if self.max_bytes is not None and size > self.max_bytes:
            return  # larger than the whole budget: used for this batch, never kept
        self.features[key], self.bytes = features, self.bytes + size
        while self.max_bytes is not None and self.bytes > self.max_bytes:
            _, evicted = self.features.popitem(last=False)
            self.bytes -= evicted.numel() * evicted.element_size()
