"""A small SVG writer for the swarm plot: leechers completed over time, one
panel per swarm size, every repetition drawn as a step curve (p2pfs in blue,
BitTorrent on the same hosts in orange when measured), with the lower bound
D and the client-server time N·F/u_s as vertical lines.
Python 3 standard library only (no matplotlib)."""

from xml.sax.saxutils import escape

W, H = 360, 260
ML, MR, MT, MB = 48, 12, 30, 40


def _nice_step(span, ticks=5):
    raw = span / ticks
    for m in (1, 2, 5, 10, 20, 50, 100, 200):
        if m >= raw:
            return m
    return 500


def _panel(x0, n, data):
    curves = data["curves"]
    bt_curves = data.get("bt_curves") or []
    d = data["D"]
    cs = data["client_server"]
    tmax = max([max(c) for c in curves + bt_curves] + [d]) * 1.08
    show_cs = cs <= tmax * 1.6
    if show_cs:
        tmax = max(tmax, cs * 1.04)
    pw, ph = W - ML - MR, H - MT - MB

    def sx(t):
        return x0 + ML + pw * t / tmax

    def sy(k):
        return MT + ph * (1 - k / n)

    out = [f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">'
           f'N = {n} leechers</text>',
           f'<rect x="{x0 + ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" '
           f'stroke="#999"/>']
    step = _nice_step(tmax)
    t = 0
    while t <= tmax:
        out.append(f'<line x1="{sx(t):.1f}" y1="{MT + ph}" x2="{sx(t):.1f}" y2="{MT + ph + 4}" '
                   f'stroke="#333"/><text x="{sx(t):.1f}" y="{MT + ph + 16}" '
                   f'text-anchor="middle">{t:g}</text>')
        t += step
    ystep = max(1, n // 4)
    for k in range(0, n + 1, ystep):
        out.append(f'<line x1="{x0 + ML - 4}" y1="{sy(k):.1f}" x2="{x0 + ML}" y2="{sy(k):.1f}" '
                   f'stroke="#333"/><text x="{x0 + ML - 7}" y="{sy(k) + 4:.1f}" '
                   f'text-anchor="end">{k}</text>')
    out.append(f'<text x="{x0 + ML + pw / 2}" y="{H - 6}" text-anchor="middle">'
               f'seconds since the fetches were issued</text>')
    out.append(f'<line x1="{sx(d):.1f}" y1="{MT}" x2="{sx(d):.1f}" y2="{MT + ph}" '
               f'stroke="#c00" stroke-width="1.5" stroke-dasharray="5,3"/>'
               f'<text x="{sx(d) - 3:.1f}" y="{MT + 12}" fill="#c00" text-anchor="end">'
               f'bound D</text>')
    if show_cs:
        out.append(f'<line x1="{sx(cs):.1f}" y1="{MT}" x2="{sx(cs):.1f}" y2="{MT + ph}" '
                   f'stroke="#777" stroke-dasharray="2,3"/>'
                   f'<text x="{sx(cs) - 3:.1f}" y="{MT + 26}" fill="#777" text-anchor="end">'
                   f'N·F/u_s</text>')
    for group, first, rest in ((bt_curves, "#d9730d", "#f0a860"),
                               (curves, "#1f5fbf", "#6f9fdf")):
        for i, c in enumerate(group):
            pts = [f"{sx(0):.1f},{sy(0):.1f}"]
            for k, t in enumerate(sorted(c), start=1):
                pts.append(f"{sx(t):.1f},{sy(k - 1):.1f}")
                pts.append(f"{sx(t):.1f},{sy(k):.1f}")
            colour = first if i == 0 else rest
            out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" '
                       f'stroke-opacity="0.75" stroke-width="1.3"/>')
    return out


def swarm_plot(swarm, path):
    keys = [k for k in swarm if k.isdigit()]
    width = W * len(keys)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H + 22}" '
             f'viewBox="0 0 {width} {H + 22}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{H + 22}" fill="white"/>']
    for i, k in enumerate(keys):
        parts += _panel(i * W, int(k), swarm[k])
    bt = any(swarm[k].get("bt_curves") for k in keys)
    note = (f"p2pfs swarm{' (blue) and BitTorrent, aria2c (orange)' if bt else ''}: "
            f"{swarm['size'] / 2**20:.0f} MiB file, every host's upload "
            f"{swarm['rate_mbit']} Mbit/s (tc tbf), one curve per repetition; y: leechers done")
    parts.append(f'<text x="8" y="{H + 16}" fill="#333">{escape(note)}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
