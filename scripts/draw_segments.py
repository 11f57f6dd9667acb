"""Draws docs/segments.png: the segments three obtain_steps calls return
for two envs whose episodes run across calls (the picture of the guide
on whole episodes, segments and streams).

    python scripts/draw_segments.py docs/segments.png   # needs matplotlib
"""

import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

#: Per env, its episodes' (first step, last step + 1), in env steps.
EPISODES = {'env 0': [(0, 7), (7, 19), (19, 24)],
            'env 1': [(0, 4), (4, 10), (10, 24)]}
CALL = 8  # obtain_steps(8): every env steps 8 times per call
COLORS = ['#4c72b0', '#dd8452', '#55a868', '#c44e52']


def main(path):
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    for c in range(3):
        ax.axvspan(c * CALL, (c + 1) * CALL, color='0.93' if c % 2 else
                   '0.98', zorder=0)
        ax.text(c * CALL + CALL / 2, 2.05, f'call {c + 1} (version {c + 1})',
                ha='center', fontsize=9)
    for row, (env, episodes) in enumerate(EPISODES.items()):
        y = 1 - row
        for e, (first, end) in enumerate(episodes):
            cuts = [b for b in range(CALL, 3 * CALL, CALL) if first < b < end]
            bounds = [first] + cuts + [end]
            for a, b in zip(bounds, bounds[1:]):
                ax.barh(y, b - a - 0.15, left=a + 0.05, height=0.5,
                        color=COLORS[e % len(COLORS)], zorder=2)
                label = 'cut' if b in cuts else 'ends'
                ax.text(a + (b - a) / 2, y, f'ep {e}\n{label}', ha='center',
                        va='center', fontsize=7, color='white', zorder=3)
        ax.text(-0.5, y, env, ha='right', va='center', fontsize=9)
    ax.set_xlim(-4, 3 * CALL)
    ax.set_ylim(-0.5, 2.4)
    ax.set_yticks([])
    ax.set_xlabel('env steps')
    for side in ('top', 'right', 'left'):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f'wrote {path}')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'segments.png')
