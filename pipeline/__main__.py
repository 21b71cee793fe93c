import sys

from pipeline import interrupts

interrupts.install()  # before the heavy imports: a signal during start-up still stops cleanly with 130

try:
    from pipeline.cli import main
except KeyboardInterrupt:
    print("pipeline interrupted: stopped while starting; nothing was written.", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    main()
