// Two tiny SVG chart kinds for the capacity report (no dependencies): lines over a numeric x axis, and grouped bars.

export interface Series {
  name: string;
  points: [x: number, y: number][];
}

const WIDTH = 640;
const HEIGHT = 340;
const MARGIN = { top: 36, right: 170, bottom: 48, left: 64 };
const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b'];
const plotW = WIDTH - MARGIN.left - MARGIN.right;
const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;

const escapeXml = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Round tick values covering [0, max]. */
function ticks(max: number, count = 5): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw;
  return Array.from({ length: Math.ceil(max / step) + 1 }, (_, i) => Number((i * step).toPrecision(6)));
}

const label = (n: number) => (n >= 10_000 ? `${n / 1000}k` : String(n));

function frame(
  title: string,
  xLabel: string,
  yLabel: string,
  yTicks: number[],
  body: string,
  legend: string[],
) {
  const yMax = yTicks.at(-1)!;
  const grid = yTicks
    .map((t) => {
      const y = MARGIN.top + plotH - (t / yMax) * plotH;
      return `<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${y}" y2="${y}" stroke="#ddd"/><text x="${MARGIN.left - 6}" y="${y + 4}" text-anchor="end">${label(t)}</text>`;
    })
    .join('');
  const legendSvg = legend
    .map(
      (name, i) =>
        `<rect x="${WIDTH - MARGIN.right + 14}" y="${MARGIN.top + i * 20}" width="12" height="12" fill="${COLORS[i % COLORS.length]}"/><text x="${WIDTH - MARGIN.right + 32}" y="${MARGIN.top + i * 20 + 10}">${escapeXml(name)}</text>`,
    )
    .join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="${WIDTH / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(title)}</text>
${grid}
<line x1="${MARGIN.left}" x2="${MARGIN.left}" y1="${MARGIN.top}" y2="${MARGIN.top + plotH}" stroke="#333"/>
<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${MARGIN.top + plotH}" y2="${MARGIN.top + plotH}" stroke="#333"/>
${body}
<text x="${MARGIN.left + plotW / 2}" y="${HEIGHT - 10}" text-anchor="middle">${escapeXml(xLabel)}</text>
<text transform="translate(16 ${MARGIN.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escapeXml(yLabel)}</text>
${legendSvg}
</svg>
`;
}

/** Lines over x; `logX` spaces x logarithmically (concurrency 1 … 1000). */
export function lineChart(options: {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  logX?: boolean;
  /** A horizontal reference line (a bound or a target). */
  reference?: { y: number; label: string };
}): string {
  const xs = [...new Set(options.series.flatMap((s) => s.points.map(([x]) => x)))].sort((a, b) => a - b);
  const fx = options.logX ? (x: number) => Math.log10(x) : (x: number) => x;
  const xMin = fx(xs[0] ?? 0);
  const xMax = fx(xs.at(-1) ?? 1);
  const yMaxData = Math.max(
    ...options.series.flatMap((s) => s.points.map(([, y]) => y)),
    options.reference?.y ?? 0,
  );
  const yTicks = ticks(yMaxData);
  const yMax = yTicks.at(-1)!;
  const px = (x: number) =>
    MARGIN.left + (xMax === xMin ? plotW / 2 : ((fx(x) - xMin) / (xMax - xMin)) * plotW);
  const py = (y: number) => MARGIN.top + plotH - (Math.min(y, yMax) / yMax) * plotH;
  const xAxis = xs
    .map((x) => `<text x="${px(x)}" y="${MARGIN.top + plotH + 16}" text-anchor="middle">${label(x)}</text>`)
    .join('');
  const lines = options.series
    .map((s, i) => {
      const color = COLORS[i % COLORS.length];
      const path = s.points.map(
        ([x, y], j) => `${j === 0 ? 'M' : 'L'}${px(x).toFixed(1)},${py(y).toFixed(1)}`,
      );
      const dots = s.points.map(
        ([x, y]) => `<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${color}"/>`,
      );
      return `<path d="${path.join('')}" fill="none" stroke="${color}" stroke-width="2"/>${dots.join('')}`;
    })
    .join('');
  const reference = options.reference
    ? `<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${py(options.reference.y)}" y2="${py(options.reference.y)}" stroke="#999" stroke-dasharray="6 4"/><text x="${MARGIN.left + plotW - 4}" y="${py(options.reference.y) - 5}" text-anchor="end" fill="#666">${escapeXml(options.reference.label)}</text>`
    : '';
  return frame(
    options.title,
    options.xLabel,
    options.yLabel,
    yTicks,
    xAxis + reference + lines,
    options.series.map((s) => s.name),
  );
}

/** Bars per group (`groups` on the x axis), one bar per series within each group. */
export function barChart(options: {
  title: string;
  xLabel: string;
  yLabel: string;
  groups: string[];
  series: { name: string; values: number[] }[];
}): string {
  const yTicks = ticks(Math.max(...options.series.flatMap((s) => s.values.filter(Number.isFinite))));
  const yMax = yTicks.at(-1)!;
  const groupW = plotW / options.groups.length;
  const barW = (groupW * 0.8) / options.series.length;
  const bars = options.series
    .map((s, i) =>
      s.values
        .map((value, g) => {
          if (!Number.isFinite(value)) return '';
          const h = (Math.max(0, value) / yMax) * plotH;
          const x = MARGIN.left + g * groupW + groupW * 0.1 + i * barW;
          return `<rect x="${x.toFixed(1)}" y="${(MARGIN.top + plotH - h).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${COLORS[i % COLORS.length]}"/>`;
        })
        .join(''),
    )
    .join('');
  const xAxis = options.groups
    .map(
      (name, g) =>
        `<text x="${MARGIN.left + g * groupW + groupW / 2}" y="${MARGIN.top + plotH + 16}" text-anchor="middle">${escapeXml(name)}</text>`,
    )
    .join('');
  return frame(
    options.title,
    options.xLabel,
    options.yLabel,
    yTicks,
    xAxis + bars,
    options.series.map((s) => s.name),
  );
}
