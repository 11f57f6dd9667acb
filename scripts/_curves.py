"""Learning curves of the training scripts: a CSV of ``(steps, seconds,
mean_return)`` rows and a plot of it, the figures in ``docs/``."""

import csv


def save_curve(curve, csv_path, plot_path, unit, ylabel, title,
               baseline=None):
    """Write ``curve`` to ``csv_path`` and draw it into ``plot_path`` (each
    skipped when None). ``unit`` names the x axis and the CSV's first
    column ("env steps"). ``baseline``, a callable returning a ``(label,
    value)`` pair (the return of random actions), is called only when there
    is a plot, and its value drawn as a dashed line."""
    if csv_path:
        with open(csv_path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow([unit.replace(' ', '_'), 'seconds',
                             'mean_return'])
            writer.writerows(curve)
        print(f'wrote {csv_path}')
    if not plot_path:
        return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c[0] for c in curve], [c[2] for c in curve])
    ax.set_xlabel(unit)
    ax.set_ylabel(ylabel)
    if baseline is not None:
        label, value = baseline()
        ax.axhline(value, color='gray', linestyle='--',
                   label=f'{label} ({value:.1f})')
        ax.legend(loc='lower right')
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(plot_path)
    plt.close(fig)
    print(f'wrote {plot_path}')
