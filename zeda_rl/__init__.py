"""zeda_rl: ZEDA (zero-expert self-distillation) as a distributed post-training framework.

Importing the package registers the ZEDA architectures with transformers' Auto classes.
"""

__version__ = "0.1.0"

from zeda_rl.models import register as _register_models

_register_models()
