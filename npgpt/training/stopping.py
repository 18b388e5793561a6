"""Stopping a run on request: SIGTERM (a scheduler, a preemptible machine's notice) or SIGINT
(Ctrl-C). The run saves the checkpoint of its last finished step and exits:

    signal     what the run does                                        exit status
    SIGTERM    stops at the next micro-batch boundary, saves, says where    0
    SIGINT     the same                                                   130 (128 + 2)
    again      reported and ignored: the checkpoint is written whole first
    SIGKILL    cannot be caught: the last checkpoint written stays whole (snapshot.py)

The handler only notes the signal; it never raises, so no KeyboardInterrupt can land inside a
checkpoint write. The loop and the backends look at the note at safe points: before each step,
and between the micro-batches of a step (`Backend.train_step`'s `stop_now`). A step stopped
between its micro-batches is abandoned, not finished: its partial gradients are dropped and its
dropout draws undone, so the checkpoint is exactly the last finished step and a resumed run takes
the steps the uninterrupted one would have. Why not finish the step: with many micro-batches a
step of a big model takes minutes, and a preemptible machine gives ~30 s between its SIGTERM and
its SIGKILL; the wait here is at most one micro-batch's forward and backward, plus the save.

Several processes (torchrun): a signal reaches them at slightly different times, or only some of
them. At every safe point every process asks `Backend.agreed_stop` (an all-reduce of the signal
numbers, MAX: SIGTERM over SIGINT), so all stop at the same point of the same step, exit with
the same status, and the main process writes exactly one checkpoint. torchrun itself passes a
signal it receives on to every process, waits `--shutdown-timeout` (30 s) for them, then kills
the rest; it reports its own error status, whatever theirs.
"""

import contextlib
import os
import signal
import threading

EXIT_STATUS = {signal.SIGTERM: 0, signal.SIGINT: 130}


class Stopped(Exception):
    """The run stopped on a signal after saving the checkpoint of its last finished step; the
    message says where it is. `exit_status`: what the command exits with."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_status = EXIT_STATUS[signum]


class StopRequest:
    """What the signal handler noted, and what the processes agreed on.

    received  the signal this process got (0: none); SIGTERM outranks SIGINT
    agreed    the signal every process stops for, once `now()` said so (0: going on)
    """

    def __init__(self, agree, show):
        self.agree = agree  # Backend.agreed_stop: the same answer in every process
        self.show = show  # whether this process reports signals (the main one)
        self.received = 0
        self.agreed = 0

    def note(self, signum, frame):
        """The signal handler. It must not raise: it runs between any two bytecodes of the
        training, a checkpoint write included."""
        again = self.received != 0
        self.received = max(self.received, signum)
        if again:
            message = (
                f"{signal_name(signum)} again: still stopping; the checkpoint is written whole "
                f"before the process exits (kill -KILL {os.getpid()} quits now, keeping the "
                "previous checkpoint)"
            )
        else:
            message = (
                f"{signal_name(signum)}: stopping at the next micro-batch boundary, then saving a "
                "checkpoint (a second signal is ignored until it is saved)"
            )
        if self.show:
            ends = ("", "\n") if again else ("\n", "\n")  # the first one leaves the progress bar
            with contextlib.suppress(OSError):  # a closed or full stderr must not stop the stop
                os.write(2, message.join(ends).encode())  # os.write: no buffered stream re-entered

    def now(self):
        """Whether to stop here. Every process asks at the same points and gets the same
        answer, which is kept in `agreed`."""
        self.agreed = self.agree(self.received)
        return self.agreed != 0


@contextlib.contextmanager
def on_signals(agree, show):
    """A StopRequest fed by SIGTERM and SIGINT while the block runs; the previous handlers are
    back afterwards. Only the main thread may set handlers: elsewhere (a training started from
    a thread) signals keep their usual effect and the request stays empty."""
    stop = StopRequest(agree, show)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.signal(signum, stop.note) for signum in EXIT_STATUS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            # None: a handler set outside Python, which cannot be put back; the default is next
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def signal_name(signum):
    return signal.Signals(signum).name
