"""Test your own stateful steps: a reference model, a hypothesis state machine and a checker.

Three lines test a step class of your own::

    from stepfsm.testing import check_lifecycle

    def test_my_llm_lifecycle():
        check_lifecycle(MyLLM, is_held=lambda llm: llm.model is not None)

:func:`check_lifecycle` drives several instances of the class, their copies
and pickles, and a few threads and asyncio tasks through random sequences of
``load``, ``ensure_loaded``, ``unload``, ``reload``, ``acquire``, ``release``,
guarded use and their awaited twins (``aload``, ``aensure_loaded``,
``aunload``, ``areload``, ``async with aloaded()``, an awaited guarded call),
and after every step compares each object with the reference model: its
state, its holders, the error class each call raised, and whether its
resource is held (``is_held``). A failure is an :class:`AssertionError`
naming the shortest sequence hypothesis found and the rule that broke, e.g.
``after [s0 = factory(), s0.load(), s0.unload()] s0 is 'unloaded' but its resource is still
held: unload() does not release it (or not all of it)``.

The reference model (:func:`model_step`) is the lifecycle as a pure function
``(state, holders, op, outcome) -> (state', holders', result)``. Every state it
moves to comes from :data:`stepfsm.states.TRANSITIONS` (through
:func:`stepfsm.states.next_state`); which transitions an operation fires, and
what it returns or raises, is docs/design.md §2; an awaited operation is
judged as its synchronous twin (:data:`SYNC_TWIN`). stepfsm's own property
tests check the library against this same function.

Subclass :class:`LifecycleMachine` to add rules of your own; ``TestX =
MyMachine.TestCase`` makes it a test. This package imports hypothesis; nothing
in ``stepfsm`` imports it, so ``import stepfsm`` never needs it.

Layering, bottom to top (each module imports only modules above it in this
list, and of stepfsm only its public modules ``errors``, ``states``,
``machine`` and ``wrap``, plus, for the type checker, the ``OnRepeat`` type from
``_settings``):

* ``_ops``        the vocabulary: operations, how the step's own code ends, outcomes
* ``model``       the reference model: :func:`model_step`, :func:`candidates`
* ``observer``    real calls: :func:`perform`, :func:`aperform` (awaited), :func:`caller`,
  and :func:`mismatches` against the model
* ``linearizer``  concurrent histories: :class:`Call`, :func:`linearize`
* ``machine``     :class:`LifecycleMachine` and :func:`check_lifecycle` (the only
  module that imports hypothesis)
* this ``__init__`` only hands the public names on.
"""

from __future__ import annotations

from ._ops import (
    ASYNC_OPS,
    BEHAVIOURS,
    OPS,
    OUTCOMES,
    SYNC_TWIN,
    AnyOp,
    AsyncOp,
    Behaviour,
    Op,
    Outcome,
    Ran,
)
from .linearizer import Call, linearize
from .machine import STEP, LifecycleMachine, Tracked, check_lifecycle
from .model import Config, Holders, ModelError, Result, candidates, model_step
from .observer import Observed, aperform, caller, mismatches, perform

__all__ = [
    "ASYNC_OPS",
    "BEHAVIOURS",
    "OPS",
    "OUTCOMES",
    "STEP",
    "SYNC_TWIN",
    "AnyOp",
    "AsyncOp",
    "Behaviour",
    "Call",
    "Config",
    "Holders",
    "LifecycleMachine",
    "ModelError",
    "Observed",
    "Op",
    "Outcome",
    "Ran",
    "Result",
    "Tracked",
    "aperform",
    "caller",
    "candidates",
    "check_lifecycle",
    "linearize",
    "mismatches",
    "model_step",
    "perform",
]
