// Benchmark child: the vLLM simulator (zero latency unless options are given as JSON in argv[2]).
import { serveInChild } from '../lib/child.js';
import { testing } from '../lib/kit.js';

const options = process.argv[2] === undefined ? {} : JSON.parse(process.argv[2]);
const sim = await testing.startVllmSimulator({ keepAliveTimeoutMs: 60_000, ...options });
serveInChild(sim.url, () => sim.close());
process.on('message', async (message) => {
  if (message === 'stats') process.send?.({ stats: sim.stats() });
});
