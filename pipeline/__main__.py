import sys

from pipeline import interrupts

interrupts.install()  # before the heavy imports: a signal during start-up still stops cleanly with 130

try:
    from pipeline.cli import entry
except KeyboardInterrupt:
    # Python resets the handlers to "terminate" while it shuts down: a repeated signal would turn 130 into -15.
    interrupts.ignore()
    print("pipeline interrupted: stopped while starting; nothing was written.", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    entry()
