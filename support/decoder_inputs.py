"""The PaLM decoder's argument checks (palm_decoder.PaLMDecoder.check_inputs): the inputs of its
training forward and of evaluation/decoding.py's prefill, each error naming the argument and what
was expected.

The checks that read tensor values (visual_start's range, loss_mask's first column, num_targets)
run on CPU tensors outside torch.compile only: on a GPU each would be a host sync, and in a
compiled model a graph break (tests/test_compile.py).
"""

import torch


def check(
    config, input_ids, prefix, visual_start, loss_mask=None, reduction="mean", num_targets=None
):
    """Raise a ValueError naming the argument that does not fit `config` (a PaLMConfig)."""
    if prefix is not None and (prefix.dim() != 3 or prefix.shape[-1] != config.dim):
        raise ValueError(
            f"prefix must be (B, P, {config.dim}) embeddings; got shape {tuple(prefix.shape)}"
        )
    if input_ids is not None and input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, L) token ids; got shape {tuple(input_ids.shape)}")
    if input_ids is None and prefix is None:
        raise ValueError("give input_ids, a prefix, or both")
    if input_ids is not None and prefix is not None and prefix.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"prefix has batch {prefix.shape[0]} but input_ids has batch {input_ids.shape[0]}"
        )
    reference = input_ids if input_ids is not None else prefix
    B, L = reference.shape[0], 0 if input_ids is None else input_ids.shape[1]
    start = torch.as_tensor(0 if visual_start is None else visual_start).long().expand(B)
    # only where it costs no host sync and no graph break
    checkable = start.device.type == "cpu" and not torch.compiler.is_compiling()
    if checkable and ((start < 0) | (start > L)).any():
        raise ValueError(
            f"visual_start={start.tolist()} must lie in 0..{L} (the number of text positions)"
        )
    prefix_len = 0 if prefix is None else prefix.shape[1]
    if prefix_len + L > config.max_seq_len:
        raise ValueError(
            f"sequence of {prefix_len} visual + {L} text positions is longer than "
            f"max_seq_len={config.max_seq_len}"
        )
    if loss_mask is not None and (input_ids is None or loss_mask.shape != input_ids.shape):
        raise ValueError(
            f"loss_mask has shape {tuple(loss_mask.shape)} but input_ids has shape "
            f"{None if input_ids is None else tuple(input_ids.shape)}"
        )
    checkable = checkable and (loss_mask is None or loss_mask.device.type == "cpu")
    if checkable and loss_mask is not None and L > 0:
        # token 0 has a slot to be predicted from only when the visual tokens come first
        first_ok = (start == 0) & (prefix_len > 0)  # (B,)
        if (loss_mask[:, 0].bool() & ~first_ok).any():
            raise ValueError(
                "loss_mask[:, 0] is True but no slot comes before token 0 to predict it "
                "(no visual tokens before it)"
            )
    if num_targets is not None and loss_mask is None:
        raise ValueError("num_targets counts loss_mask's targets: give loss_mask too")
    if checkable and num_targets is not None and num_targets != int(loss_mask.sum()):
        raise ValueError(
            f"num_targets={num_targets} but loss_mask holds {int(loss_mask.sum())} targets"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}; choose 'mean' or 'sum'")
