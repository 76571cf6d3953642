"""The small teacher MoE that the project trains itself from offline data."""
