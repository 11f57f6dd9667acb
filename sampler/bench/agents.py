"""The policy of ``sampler bench --agent cnn``: the Nature-DQN network
(three convolutions and a 512-unit layer, Mnih et al. 2015) in torch,
sampling from a categorical over the actions, as Atari PPO and DQN
implementations use it. It runs in the caller of a vector env (``--mode
vector``), where most RL code keeps its policy, on the 4x84x84 uint8
frames of the Atari ids."""

from gymnasium import spaces


def nature_cnn_agent(observation_space, action_space, seed):
    """A ``workers.TorchAgent`` over the Nature CNN; a ValueError for
    spaces it does not fit, an ImportError saying what to install without
    torch."""
    if not (isinstance(observation_space, spaces.Box) and
            observation_space.shape == (4, 84, 84) and
            isinstance(action_space, spaces.Discrete)):
        msg = (f'--agent cnn takes 4x84x84 frames and Discrete actions '
               f'(the Atari ids, e.g. ALE/Pong-v5); this env has '
               f'{observation_space} and {action_space}')
        raise ValueError(msg)
    try:
        import torch
    except ImportError:
        msg = ('--agent cnn needs torch: pip install '
               '"rollout-sampler[torch]"')
        raise ImportError(msg) from None
    from workers import TorchAgent

    torch.manual_seed(seed)
    return TorchAgent(_nature_cnn(torch, int(action_space.n)),
                      observation_space, action_space, seed=seed)


def _nature_cnn(torch, n_actions):
    nn = torch.nn

    class NatureCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(),
                nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
                nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
                nn.Linear(512, n_actions))

        def forward(self, frames):
            logits = self.body(frames.float() / 255.0)
            return torch.distributions.Categorical(logits=logits)

    return NatureCNN()
