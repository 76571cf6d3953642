"""Training losses of ZEDA."""

from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig, group_aux_loss, target_zero_ratio

__all__ = ["GroupAuxLossConfig", "group_aux_loss", "target_zero_ratio"]
