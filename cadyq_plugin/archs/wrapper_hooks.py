"""The forward hooks ``CADyQWrapper`` leaves in a backbone: quantizers at module inputs and outputs, and the
capture of block features and the body output for ``forward(x, return_aux=True)``.

Hooks are objects, not closures: ``copy.deepcopy`` of the network (the MAC counter's meta copy) then copies them
together with the quantizers and the forward state they point to, so a copy never runs the original's modules.
A hook also knows its quantizer's name, so that a DataParallel replica can bind a copy of it to the replica's own
quantizer and forward state (:meth:`InputHook.bound_to`).
"""


class ForwardState:
    """What the hooks of one forward pass share: the bit record going in, features and body coming out."""

    def __init__(self):
        self.record = None
        self.feats = []
        self.body = None

    def start(self, record):
        self.record, self.feats, self.body = record, [], None

    def finish(self):
        """End the pass; returns ``(body, feats)`` and drops every reference to the pass's tensors."""
        body, feats = self.body, self.feats
        self.record, self.feats, self.body = None, [], None
        return body, feats


class InputHook:
    """Forward pre-hook: keeps the raw input as the body output if asked, then quantizes the first argument."""

    def __init__(self, state, quantizer=None, quantizer_name=None, body=False):
        self.state, self.quantizer, self.quantizer_name, self.body = state, quantizer, quantizer_name, body

    def bound_to(self, root, state):
        """This hook on a copy of the network ``root`` (a DataParallel replica), with its forward ``state``."""
        return type(self)(state, _quantizer_of(root, self.quantizer_name), self.quantizer_name, self.body)

    def __call__(self, module, args):
        if self.body:
            self.state.body = args[0]
        if self.quantizer is None:
            return None
        return (self.quantizer(args[0], self.state.record),) + tuple(args[1:])


class OutputHook:
    """Forward hook: keeps the raw output as a block feature and/or the body output, then quantizes it."""

    def __init__(self, state, quantizer=None, quantizer_name=None, feature=False, body=False):
        self.state, self.quantizer, self.quantizer_name = state, quantizer, quantizer_name
        self.feature, self.body = feature, body

    def bound_to(self, root, state):
        """This hook on a copy of the network ``root`` (a DataParallel replica), with its forward ``state``."""
        return type(self)(state, _quantizer_of(root, self.quantizer_name), self.quantizer_name, self.feature,
                          self.body)

    def __call__(self, module, args, output):
        if self.feature:
            self.state.feats.append(output)
        if self.body:
            self.state.body = output
        if self.quantizer is None:
            return None
        return self.quantizer(output, self.state.record)


def _quantizer_of(root, name):
    return root.get_submodule(name) if name is not None else None
