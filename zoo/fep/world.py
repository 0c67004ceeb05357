"""The world the agent lives in (the generative process), which it senses and acts on but cannot see."""

import torch


class ThermostatWorld:
    """The paper's world: position x, temperature T(x) = T0 / (x² + 1), velocity x' = a (MATH.md §4.1).

    Sensations: φ = T(x), φ' = T_x(x) x' with T_x = dT/dx = −2 T0 x / (x² + 1)²; the inverse model is
    ∂φ̃/∂a = (0, T_x).

    A world is any object with:

    * ``n_sensory``: how many orders of sensations it gives;
    * ``batch_shape``: the agents' batch shape of its own per-agent settings;
    * ``initial_state(n_agents, dtype)`` and ``step(state, a, dt)``: its state (a dict of tensors
      [n_agents]) at the start and one Euler step later under the action ``a`` [n_agents];
    * ``sense(state)``: the noise-free sensations, a tensor [n_sensory, n_agents] (orders first, agents last,
      so that each order is a contiguous row);
    * ``inverse_model(state, v)`` = Σ_n ∂φ[n]/∂a · v[n] [n_agents] for v [n_sensory, n_agents]: how action
      changes the sensations, applied to ∂E/∂φ̃ (the agent's inverse model);
    * ``observe(state)``: named tensors [n_agents] for the table.

    Args:
        T0: the temperature at x = 0.
        x0: the start position, a number or a tensor [n_agents].
    """

    n_sensory = 2

    def __init__(self, T0=100.0, x0=2.0):
        self.T0, self.x0 = T0, x0
        self.batch_shape = torch.as_tensor(x0).shape

    def initial_state(self, n_agents, dtype=torch.float64):
        """The state at rest at x0: {"x", "x_dot", "T", "T_x"}, tensors [n_agents]."""
        x = torch.as_tensor(self.x0, dtype=dtype).expand(n_agents).clone()
        return self._state(x, torch.zeros_like(x))

    def step(self, state, a, dt):
        """One Euler step of x' = a (the appendix: x'(i) = a(i−1); x(i) = x(i−1) + dt x'(i))."""
        return self._state(torch.add(state["x"], a, alpha=dt), a)

    def sense(self, state):
        """(φ, φ') = (T, T_x x'), tensor [2, n_agents]."""
        return torch.stack([state["T"], state["T_x"] * state["x_dot"]])

    def inverse_model(self, state, v):
        """(∂φ/∂a, ∂φ'/∂a) · v = (0, T_x) · v: only φ' = T_x x' = T_x a depends on the action."""
        return state["T_x"] * v[1]

    def observe(self, state):
        """{"position": x, "T": T(x)}, tensors [n_agents]."""
        return {"position": state["x"], "T": state["T"]}

    def _state(self, x, x_dot):
        # in-place native operations only: this runs once per time step
        inv = x.square().add_(1).reciprocal_()  # 1 / (x² + 1)
        T = inv * self.T0
        return {"x": x, "x_dot": x_dot, "T": T, "T_x": torch.mul(x, inv).mul_(T).mul_(-2)}
