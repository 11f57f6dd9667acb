"""``python -m sampler``: the same click group as the ``sampler`` command."""

from sampler.cli import main

if __name__ == '__main__':
    main(prog_name='sampler')
