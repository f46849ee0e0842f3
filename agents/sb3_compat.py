"""Work-arounds for the installed SB3 / sb3-contrib versions.

``RecurrentPPO`` (sb3-contrib 2.9.2) stores ``MultiBinary`` actions in its
rollout buffer with the action space's dtype (int8) and pads them into an
int8 tensor, so ``BernoulliDistribution.log_prob`` fails with "result type
Float can't be cast to the desired output type Char" in the first training
epoch.  SB3's own ``RolloutBuffer`` casts actions to float when sampling; the
recurrent buffer does not.  :class:`RecurrentPPO` below stores actions as
float32 instead (what SB3's PPO effectively trains on), and is otherwise the
sb3-contrib class (``isinstance(model, sb3_contrib.RecurrentPPO)`` holds).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from sb3_contrib import RecurrentPPO as _RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer


class _FloatActionsMixin:
    def reset(self) -> None:
        super().reset()
        self.actions = self.actions.astype(np.float32)


class FloatActionRecurrentRolloutBuffer(_FloatActionsMixin, RecurrentRolloutBuffer):
    pass


class FloatActionRecurrentDictRolloutBuffer(_FloatActionsMixin, RecurrentDictRolloutBuffer):
    pass


class RecurrentPPO(_RecurrentPPO):
    __doc__ = (_RecurrentPPO.__doc__ or "") + "\n\n(siftmoe agents: MultiBinary actions stored as float32, see agents.sb3_compat.)"

    def _setup_model(self) -> None:
        super()._setup_model()
        if isinstance(self.action_space, spaces.MultiBinary):
            buf = self.rollout_buffer
            cls = (FloatActionRecurrentDictRolloutBuffer if isinstance(buf, RecurrentDictRolloutBuffer)
                   else FloatActionRecurrentRolloutBuffer)
            self.rollout_buffer = cls(
                self.n_steps, self.observation_space, self.action_space, buf.hidden_state_shape, self.device,
                gamma=self.gamma, gae_lambda=self.gae_lambda, n_envs=self.n_envs,
            )
