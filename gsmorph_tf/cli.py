"""What the ``run_*.py`` entry points share. They pass flag values in; nothing here reads flags."""
import sys


def quiet_logs(verbosity_given):
    """Hide TensorFlow's INFO lines (saver, tracing, absl) that bury the progress bar, unless the user asked
    for a log level with ``--verbosity``."""
    if verbosity_given:
        return
    import tensorflow as tf
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("WARNING")


def fail(error):
    """Report a user error as one ``error: ...`` line on stderr (no traceback) and return exit status 2."""
    print("error: %s" % error, file=sys.stderr)
    return 2
