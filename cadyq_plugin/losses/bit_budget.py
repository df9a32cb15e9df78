"""The controller that steers the bit-loss weight so that the training batches' mean bit reaches a budget.

A PI controller on the weight, acting on the running (exponentially smoothed) error ``e = mean bit - target``::

    r_t = s * r_{t-1} + (1 - s) * e_t        (r_1 = e_1)
    I_t = I_{t-1} + r_t   (with a band: only if |r_t| <= band, else I_{t-1})
    w_t = scale * (kp * r_t + ki * I_t)

Why PI: the selectors integrate what the loss asks of them (their parameters move a little every step, through
Adam's momentum), so the mean bit responds to the weight like an integrator with a lag. An integral term alone
(a Lagrange multiplier by dual ascent) then makes an undamped loop that oscillates around the target; the
proportional term damps it. A penalty alone (a hinge, or a two-sided squared penalty) settles where its pull
balances the distortion loss's pull towards high bits, i.e. off target by an amount that depends on the losses;
the integral term finds the balancing weight instead, so the steady-state error is zero. The weight is signed:
above the target it lowers the bits, below it raises them (a negative weight), so the target is reached from
either side. The smoothing only takes the noise of single batches off the proportional term: a long running mean is
a lag inside the loop, which lets the bits overshoot far past the target when they move fast. The integral only
accumulates while the running error is within ``band`` bits of the target (conditional integration, an anti-windup):
far from it the proportional term already pushes hard, and the selectors can take a hundred iterations to leave a
saturated start (CARN stays at 8 bits for over 100 iterations), during which an unconditional integral winds up to
many times the balancing weight and then drives the bits to the lowest candidate long after they crossed the target.
It is plain arithmetic on Python floats, identical on every rank given the same (global) error, and its whole state
is three numbers (:meth:`state_dict`), so a resumed run continues it exactly.
"""


class BudgetController:
    """PI controller of the bit-loss weight (see the module doc).

    Args:
        scale (float): weight per unit of controller output (BitLoss's ``loss_weight``).
        kp (float): proportional gain, per bit of running error.
        ki (float): integral gain, per bit of running error and iteration.
        smoothing (float): ``s`` of the running error, in [0, 1) (0: the batch's own error).
        band (float | None): the integral accumulates only while ``|running error| <= band`` (bits); None: always.
    """

    def __init__(self, scale, kp, ki, smoothing, band):
        self.scale = float(scale)
        self.kp = float(kp)
        self.ki = float(ki)
        self.smoothing = float(smoothing)
        self.band = None if band is None else float(band)
        self.steps = 0
        self.running = 0.0
        self.integral = 0.0

    @property
    def weight(self):
        """The bit-loss weight of the latest update (0 before the first)."""
        return self.scale * (self.kp * self.running + self.ki * self.integral)

    def update(self, error):
        """One iteration's error (mean bit minus target, in bits); returns the new weight."""
        self.steps += 1
        error = float(error)
        self.running = error if self.steps == 1 else self.smoothing * self.running + (1 - self.smoothing) * error
        if self.band is None or abs(self.running) <= self.band:
            self.integral += self.running
        return self.weight

    def state_dict(self):
        return {'steps': self.steps, 'running': self.running, 'integral': self.integral}

    def load_state_dict(self, state):
        self.steps = int(state['steps'])
        self.running = float(state['running'])
        self.integral = float(state['integral'])
